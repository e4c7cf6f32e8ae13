"""Generates the built-in demo dataset: short egocentric-like clips with sound, deterministic from a seed.

Each clip shows a hand moving one object across a cluttered, textured worktop seen by a slowly
drifting head-mounted camera, with the object's own sound under kitchen noise. The label is
(motion, object): 4 motions x 3 objects = 12 classes, and every modality carries part of it with
different reliability (the design, fixed up front, is in docs/demo-data.md):

- motion is best seen in optical flow (the hand and object move against the camera's own drift);
  RGB holds it over time (the object grows or shrinks for push/pull, the arm swings for left/right);
- the object is heard (each object has its own sound, under noise, sometimes silent or with another
  object's sound in the room) and seen (colour, shape, texture, but with jitter, lighting, look-alike
  distractors on the worktop and occlusion by the hand).

Unlabelled clips (protocol version 4) are the same generator at a seed of their own, with no label written
(`generate_unlabelled_clips`).

Clips are written with PyAV (H.264 yuv420p + AAC mono in .mp4), so no ffmpeg program is needed.
Pixels, sound and labels depend only on the spec (seed included); the per-clip nuisances come from
an RNG seeded with (seed, clip index).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from egodistill.common import write_json

GENERATOR_VERSION = 2  # bump when the rendering changes: a stored dataset of another version is regenerated
# Version 2: x264 without macroblock-tree rate control (mbtree=0). With it, one clip encoded in two processes
# gave different pictures about one time in three (up to 34 grey levels apart), so two demos saw different data.
MOTIONS = ("push", "pull", "slide-left", "slide-right")
OBJECTS = ("cup", "box", "bottle")
MANIFEST_NAME = "segments.csv"
SPEC_NAME = "demo-spec.json"
HEAD = "action"
UNLABELLED_FOLDER = "unlabelled"  # under videos/, so one --videos folder holds every clip the cache names
UNLABELLED_PREFIX = "unl"
UNLABELLED_SPEC_NAME = "unlabelled-spec.json"

_OBJECT_HUES = (0.0, 120.0, 240.0)  # degrees: red cup, green box, blue bottle
_SKIN_HUES = (10.0, 30.0)
_TARGET_RADIUS = (17.0, 23.0)  # pixels at size 112: large moving patches, so random-init conv features see them


@dataclass(frozen=True)
class DemoSpec:
    """What to generate. The defaults are the full demo; `DemoSpec.small()` is the CI set."""

    clips_train: int = 240
    clips_val: int = 720  # 60 per class: enough clips for a 3-point difference to show (docs/demo-protocol.md)
    seconds: float = 2.0
    fps: int = 12
    size: int = 112  # square frames, pixels
    sample_rate: int = 24000  # the audio teacher's rate: no resampling at extraction
    seed: int = 0

    @classmethod
    def small(cls, seed: int = 0) -> DemoSpec:
        """About 60 clips (3 train and 2 val per class) for CI."""
        return cls(clips_train=36, clips_val=24, seed=seed)

    @property
    def frames(self) -> int:
        return int(round(self.seconds * self.fps))

    @property
    def clips(self) -> int:
        return self.clips_train + self.clips_val


def class_names(spec: DemoSpec | None = None) -> list[str]:
    """Class index -> name: index = motion * len(OBJECTS) + object, e.g. 0 "push cup"."""
    return [f"{m} {o}" for m in MOTIONS for o in OBJECTS]


def split_label(label: int) -> tuple[int, int]:
    """A class index -> (motion index, object index)."""
    return divmod(int(label), len(OBJECTS))


def clip_id(index: int) -> str:
    return f"demo-{index:05d}"


def clip_labels(spec: DemoSpec) -> np.ndarray:
    """The class of every clip (train clips first): balanced within each split, shuffled by the seed."""
    n_classes = len(class_names(spec))
    rng = np.random.default_rng([spec.seed, 0x1ABE1])
    parts = [rng.permutation(np.arange(n) % n_classes) for n in (spec.clips_train, spec.clips_val)]
    return np.concatenate(parts).astype(np.int64)


def clip_split(spec: DemoSpec, index: int) -> str:
    return "train" if index < spec.clips_train else "val"


def describe_demo(spec: DemoSpec) -> dict:
    """The dataset in a JSON-able dict, for reports: the spec, the classes and one sentence."""
    return {
        **asdict(spec), "frames_per_clip": spec.frames, "generator_version": GENERATOR_VERSION,
        "motions": list(MOTIONS), "objects": list(OBJECTS), "classes": class_names(spec),
        "description": (
            f"Demo data: {spec.clips} generated egocentric-like clips ({spec.clips_train} train, {spec.clips_val} val, "
            f"{spec.seconds:g} s at {spec.fps} fps, {spec.size}x{spec.size}, H.264 + AAC at {spec.sample_rate} Hz, seed {spec.seed}); "
            f"{len(class_names(spec))} classes = {len(MOTIONS)} motions x {len(OBJECTS)} objects. Motion is best seen in optical flow, "
            "the object is heard in the audio and seen in RGB, each under clutter, camera drift, occlusion and noise, "
            "so no single modality is perfect (design: docs/demo-data.md)."
        ),
    }


# --- generation ----------------------------------------------------------------------------

def generate_demo_data(out_dir: str | os.PathLike, spec: DemoSpec = DemoSpec(), workers: int = 2,
                       progress: Callable[[int, int], None] | None = None) -> Path:
    """Write out_dir/videos/<clip>.mp4 and out_dir/segments.csv (generic manifest, head `action`); return the manifest.

    Idempotent: when the manifest and the stored spec (demo-spec.json) match `spec`, nothing is
    written. An interrupted run keeps its finished clips (each file appears only once complete).
    `workers` processes encode in parallel (1: in this process); `progress(done, total)` is called
    after each clip.
    """
    out = Path(out_dir)
    manifest, spec_file, videos = out / MANIFEST_NAME, out / SPEC_NAME, out / "videos"
    stored = _stored_spec(spec_file)
    wanted = _spec_record(spec)
    if stored == wanted and manifest.exists() and all((videos / f"{clip_id(i)}.mp4").exists() for i in range(spec.clips)):
        return manifest
    videos.mkdir(parents=True, exist_ok=True)
    if stored != wanted:  # another spec's clips (or none): start over
        manifest.unlink(missing_ok=True)
        for old in videos.glob("demo-*.mp4"):
            old.unlink()
        write_json(spec_file, wanted)
    _write_missing(spec, videos, clip_id, workers, progress)
    labels = clip_labels(spec)
    tmp = manifest.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["segment_id", "video", "start_sec", "stop_sec", "split", f"label:{HEAD}"])
        for i in range(spec.clips):
            writer.writerow([clip_id(i), f"{clip_id(i)}.mp4", 0, f"{spec.frames / spec.fps:g}", clip_split(spec, i), int(labels[i])])
    tmp.replace(manifest)
    return manifest


def unlabelled_spec(spec: DemoSpec, clips: int, seed: int) -> DemoSpec:
    """The unlabelled clips' spec: the labelled spec's settings, `clips` clips, and a seed of their own, so each
    clip's draws (RNG seeded with (seed, index)) differ from every labelled clip's."""
    return replace(spec, clips_train=clips, clips_val=0, seed=seed)


def unlabelled_clip_id(index: int) -> str:
    return f"{UNLABELLED_PREFIX}-{index:05d}"


def generate_unlabelled_clips(out_dir: str | os.PathLike, spec: DemoSpec, workers: int = 2,
                              progress: Callable[[int, int], None] | None = None) -> Path:
    """Write out_dir/videos/unlabelled/unl-NNNNN.mp4, the clips of `spec` (see `unlabelled_spec`); return that folder.

    Their classes are drawn and rendered as any clip's, and written nowhere: no manifest, no label. Idempotent
    like generate_demo_data (the spec is stored beside them)."""
    folder = Path(out_dir) / "videos" / UNLABELLED_FOLDER
    spec_file = folder / UNLABELLED_SPEC_NAME
    wanted = _spec_record(spec)
    folder.mkdir(parents=True, exist_ok=True)
    if _stored_spec(spec_file) != wanted:
        for old in folder.glob(f"{UNLABELLED_PREFIX}-*.mp4"):
            old.unlink()
        write_json(spec_file, wanted)
    _write_missing(spec, folder, unlabelled_clip_id, workers, progress)
    return folder


def _write_missing(spec: DemoSpec, folder: Path, name: Callable[[int], str], workers: int, progress: Callable[[int, int], None] | None) -> None:
    """Encode every clip of `spec` not in `folder` yet, as folder/<name(index)>.mp4, in `workers` processes."""
    todo = [i for i in range(spec.clips) if not (folder / f"{name(i)}.mp4").exists()]
    done = spec.clips - len(todo)
    if progress:
        progress(done, spec.clips)
    if workers <= 1 or len(todo) < 4:
        for i in todo:
            _write_clip(spec, i, str(folder), name(i))
            done += 1
            if progress:
                progress(done, spec.clips)
        return
    chunks = [todo[k::workers * 4] for k in range(workers * 4)]  # a few chunks per worker: little pickling, even load
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        for n in pool.map(_write_clips, [(spec, chunk, str(folder), [name(i) for i in chunk]) for chunk in chunks if chunk]):
            done += n
            if progress:
                progress(done, spec.clips)


def _spec_record(spec: DemoSpec) -> dict:
    return {**asdict(spec), "generator_version": GENERATOR_VERSION}


def _stored_spec(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_clips(job: tuple[DemoSpec, list[int], str, list[str]]) -> int:
    spec, indices, folder, names = job
    cv2.setNumThreads(1)
    for i, name in zip(indices, names):
        _write_clip(spec, i, folder, name)
    return len(indices)


def _write_clip(spec: DemoSpec, index: int, folder: str, name: str) -> None:
    frames, audio = render_clip(spec, index)
    final = Path(folder) / f"{name}.mp4"
    tmp = final.with_name(final.stem + ".tmp.mp4")
    encode_clip(tmp, frames, audio, spec.fps, spec.sample_rate)
    tmp.replace(final)


def encode_clip(path: str | os.PathLike, frames: np.ndarray, audio: np.ndarray, fps: int, sample_rate: int) -> None:
    """Encode RGB frames [T,H,W,3] uint8 and mono audio [N] float32 as H.264 (yuv420p) + AAC in an .mp4."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height = frames.shape[2], frames.shape[1]
        video.pix_fmt = "yuv420p"
        video.codec_context.thread_count = 1  # one thread and no mbtree: the same bytes on every run
        video.options = {"preset": "veryfast", "crf": "23", "g": str(fps), "threads": "1", "x264-params": "mbtree=0"}
        sound = container.add_stream("aac", rate=sample_rate, layout="mono")
        sound.bit_rate = 64000
        sound.options = {"aac_coder": "fast"}
        for t, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode())
        chunk = 1024
        for start in range(0, len(audio), chunk):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None, start:start + chunk], dtype=np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = sample_rate, start, Fraction(1, sample_rate)
            container.mux(sound.encode(frame))
        container.mux(sound.encode())


# --- one clip --------------------------------------------------------------------------------

def render_clip(spec: DemoSpec, index: int, label: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pixels [T,H,W,3] uint8 (RGB) and mono sound [N] float32 in [-1, 1] of clip `index`.

    `label` overrides the clip's class (its nuisances stay those of (seed, index)).
    """
    if label is None:
        label = int(clip_labels(spec)[index])
    motion, obj = split_label(label)
    rng = np.random.default_rng([spec.seed, index, 0xC11B])
    scene = _draw_scene(spec, motion, obj, rng)
    frames = _render_frames(spec, scene, rng)
    audio = _render_audio(spec, scene, rng)
    return frames, audio


def _hsv_to_rgb(hue_deg: float, sat: float, val: float) -> np.ndarray:
    pixel = np.array([[[(hue_deg % 360.0) / 2.0, sat * 255.0, val * 255.0]]], np.float32).astype(np.uint8)
    return cv2.cvtColor(pixel, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency texture in about [-1, 1]."""
    grid = rng.normal(size=(cells, cells)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _draw_scene(spec: DemoSpec, motion: int, obj: int, rng: np.random.Generator) -> dict:
    """Every per-clip draw: worktop, distractors, camera path, object, hand, trajectory, sound settings."""
    s, t_count = spec.size, spec.frames
    unit = s / 112.0
    margin = int(round(20 * unit))
    big = s + 2 * margin
    # Worktop: a muted base colour, low- and high-frequency texture (DIS needs texture to see the camera move), clutter.
    base = _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.05, 0.35), rng.uniform(0.35, 0.75))
    canvas = np.empty((big, big, 3), np.float32)
    canvas[:] = base
    canvas += 28 * _smooth_noise(rng, big, big, 6)[..., None] * rng.uniform(0.5, 1.0)
    canvas += 10 * _smooth_noise(rng, big, big, big // 3)[..., None]
    for _ in range(rng.integers(6, 13)):  # clutter: muted patches, crumbs, tiles
        colour = _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.05, 0.45), rng.uniform(0.2, 0.9))
        centre = (int(rng.uniform(0, big)), int(rng.uniform(0, big)))
        axes = (int(rng.uniform(3, 16) * unit), int(rng.uniform(3, 16) * unit))
        if rng.random() < 0.5:
            cv2.ellipse(canvas, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour.tolist(), -1, cv2.LINE_AA)
        else:
            cv2.rectangle(canvas, (centre[0] - axes[0], centre[1] - axes[1]), (centre[0] + axes[0], centre[1] + axes[1]), colour.tolist(), -1, cv2.LINE_AA)
    # Distractors: 0-2 smaller look-alike objects of any class, lying still on the worktop.
    for _ in range(rng.integers(0, 3)):
        kind = int(rng.integers(0, len(OBJECTS)))
        colour = _object_colour(rng, kind)
        radius = rng.uniform(8, 12) * unit
        cx, cy = rng.uniform(radius, big - radius), rng.uniform(radius, big - radius)
        _paint_object(canvas, kind, cx, cy, radius, float(rng.uniform(-25, 25)), colour)

    # Camera: a slow drift of the head plus shake, in pixels of the frame.
    drift = rng.normal(0, 0.5 * unit, size=2)
    shake = rng.normal(0, 0.35 * unit, size=(t_count, 2))
    path = np.cumsum(np.tile(drift, (t_count, 1)) + shake, axis=0)
    path -= path.mean(axis=0)
    path = np.clip(path, -margin + 1, margin - 1)

    # The target object: class colour and shape with jitter; sometimes it looks like another class.
    shape = obj if rng.random() >= 0.15 else int(rng.integers(0, len(OBJECTS)))
    colour = _object_colour(rng, obj)
    radius = rng.uniform(*_TARGET_RADIUS) * unit
    angle = float(rng.uniform(-25, 25))
    # Trajectory: the action runs over part of the clip, smooth start and stop.
    start_f = rng.uniform(0.0, 0.3) * (t_count - 1)
    stop_f = rng.uniform(0.7, 1.0) * (t_count - 1)
    phase = np.clip((np.arange(t_count) - start_f) / max(stop_f - start_f, 1.0), 0, 1)
    phase = 0.5 - 0.5 * np.cos(np.pi * phase)
    lo, hi = 0.22 * s, 0.78 * s
    if motion in (0, 1):  # push: away (up, smaller); pull: towards (down, larger)
        travel = rng.uniform(0.2, 0.35) * s
        scales = (1.25, 0.75) if motion == 0 else (0.75, 1.25)
        x0 = rng.uniform(lo, hi)
        y_far = rng.uniform(0.25, 0.35) * s
        y_near = y_far + travel
        y0, y1 = (y_near, y_far) if motion == 0 else (y_far, y_near)
        x1 = x0 + rng.normal(0, 0.04 * s)
    else:  # slide left / right, about the same distance
        travel = rng.uniform(0.3, 0.5) * s
        direction = -1.0 if motion == 2 else 1.0
        x0 = rng.uniform(lo, hi - travel) if direction > 0 else rng.uniform(lo + travel, hi)
        x1 = x0 + direction * travel
        y0 = rng.uniform(0.35, 0.65) * s
        y1 = y0 + rng.normal(0, 0.04 * s)
        scales = (1.0, 1.0)
    xs, ys = x0 + (x1 - x0) * phase, y0 + (y1 - y0) * phase
    sizes = radius * (scales[0] + (scales[1] - scales[0]) * phase)

    # Optional foreground occluder (a bowl rim, the other hand) near one edge.
    occluder = None
    if rng.random() < 0.3:
        side = int(rng.integers(0, 4))
        occluder = {"side": side, "depth": rng.uniform(0.12, 0.25) * s,
                    "colour": _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.1, 0.5), rng.uniform(0.2, 0.8))}

    # Sound settings: the object's sound while it moves, under background noise; sometimes silent
    # (the object makes no sound) or with another object's sound in the room.
    sound = {
        "silent": bool(rng.random() < 0.15),
        "snr_db": float(rng.uniform(-6, 12)),
        "other": int(rng.choice([k for k in range(len(OBJECTS)) if k != obj])) if rng.random() < 0.2 else None,
        "pitch": float(rng.uniform(0.85, 1.2)),
    }
    return {
        "motion": motion, "object": obj, "shape": shape, "colour": colour, "angle": angle,
        "canvas": canvas, "margin": margin, "camera": path, "xs": xs, "ys": ys, "sizes": sizes,
        "phase": phase, "start_f": start_f, "stop_f": stop_f,
        "skin": _hsv_to_rgb(rng.uniform(*_SKIN_HUES), rng.uniform(0.3, 0.6), rng.uniform(0.45, 0.9)),
        "shoulder": (rng.uniform(0.65, 0.95) * s, s * 1.15),  # a right-handed wearer: the arm comes from bottom right
        "occluder": occluder,
        "gain": rng.uniform(0.75, 1.2), "tint": rng.uniform(0.88, 1.12, size=3).astype(np.float32),
        "noise": rng.uniform(3, 12), "sound": sound,
    }


def _object_colour(rng: np.random.Generator, kind: int) -> np.ndarray:
    hue = _OBJECT_HUES[kind] + rng.normal(0, 30)
    return _hsv_to_rgb(hue, rng.uniform(0.45, 0.9), rng.uniform(0.5, 0.95))


def _paint_object(image: np.ndarray, kind: int, cx: float, cy: float, radius: float, angle: float, colour: np.ndarray) -> None:
    """Paint one object (cup: disc with a dark rim; box: striped square; bottle: tall, light band, dark cap) in place."""
    h, w = image.shape[:2]
    pad = int(math.ceil(radius * 1.6)) + 2
    x0, x1 = max(0, int(cx) - pad), min(w, int(cx) + pad + 1)
    y0, y1 = max(0, int(cy) - pad), min(h, int(cy) + pad + 1)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    u = ((xx - cx) * c + (yy - cy) * s) / radius
    v = (-(xx - cx) * s + (yy - cy) * c) / radius
    soft = 1.5 / radius  # about one pixel of anti-aliasing
    if kind == 0:
        rho = np.sqrt(u * u + v * v)
        mask = np.clip((1.0 - rho) / soft, 0, 1)
        shade = 1.0 - 0.4 * (rho > 0.72) + 0.25 * np.exp(-((u + 0.3) ** 2 + (v + 0.3) ** 2) / 0.05)
    elif kind == 1:
        half = 0.9
        mask = np.clip((half - np.maximum(np.abs(u), np.abs(v))) / soft, 0, 1)
        shade = 0.8 + 0.25 * (np.sin(7.0 * (u + v)) > 0)
    else:
        mask = np.clip(np.minimum(0.5 - np.abs(u), 1.25 - np.abs(v)) / soft, 0, 1)
        shade = np.where(v < -0.85, 0.45, np.where(np.abs(v) < 0.3, 1.25, 0.9))
    paint = np.clip(colour[None, None, :] * shade[..., None], 0, 255)
    region = image[y0:y1, x0:x1]
    region += (paint - region) * mask[..., None]


def _render_frames(spec: DemoSpec, scene: dict, rng: np.random.Generator) -> np.ndarray:
    s, m = spec.size, scene["margin"]
    frames = np.empty((spec.frames, s, s, 3), np.uint8)
    sx, sy = scene["shoulder"]
    noise = rng.standard_normal(size=frames.shape, dtype=np.float32) * np.float32(scene["noise"])  # sensor noise
    for t in range(spec.frames):
        dx, dy = scene["camera"][t]
        shift = np.float32([[1, 0, -(m + dx)], [0, 1, -(m + dy)]])
        frame = cv2.warpAffine(scene["canvas"], shift, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        x, y, r = float(scene["xs"][t]), float(scene["ys"][t]), float(scene["sizes"][t])
        _paint_object(frame, scene["shape"], x, y, r, scene["angle"], scene["colour"])
        # The hand grips the object's lower right; the arm runs to the shoulder at the bottom right.
        hx, hy = x + 0.45 * r, y + 0.55 * r
        arm = int(round(max(4.0, 0.55 * r) * 16))
        cv2.line(frame, (int(hx * 16), int(hy * 16)), (int(sx * 16), int(sy * 16)), (scene["skin"] * 0.9).tolist(), max(3, int(0.9 * r)), cv2.LINE_AA, 4)
        cv2.ellipse(frame, (int(hx * 16), int(hy * 16)), (arm, int(arm * 0.75)), 30.0, 0, 360, scene["skin"].tolist(), -1, cv2.LINE_AA, 4)
        occ = scene["occluder"]
        if occ is not None:
            d = int(occ["depth"])
            ox, oy = int(-dx * 1.3), int(-dy * 1.3)  # nearer than the worktop: more parallax
            box = {0: ((-s, -s), (2 * s, d)), 1: ((-s, s - d), (2 * s, 2 * s)), 2: ((-s, -s), (d, 2 * s)), 3: ((s - d, -s), (2 * s, 2 * s))}[occ["side"]]
            cv2.rectangle(frame, (box[0][0] + ox, box[0][1] + oy), (box[1][0] + ox, box[1][1] + oy), occ["colour"].tolist(), -1, cv2.LINE_AA)
        frame = frame * (scene["gain"] * scene["tint"])
        frame += noise[t]
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def _render_audio(spec: DemoSpec, scene: dict, rng: np.random.Generator) -> np.ndarray:
    rate = spec.sample_rate
    n = int(round(spec.frames / spec.fps * rate))
    t = np.arange(n) / rate
    # Background: pink-ish room noise, a hum (fridge, extractor fan) and now and then a clatter.
    white = rng.normal(size=n)
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spectrum /= np.sqrt(np.maximum(freqs, 20.0))
    background = np.fft.irfft(spectrum, n)
    background /= background.std() + 1e-9
    hum_f = rng.uniform(70, 200)
    background += rng.uniform(0.2, 1.0) * sum(np.sin(2 * np.pi * k * hum_f * t + rng.uniform(0, 6.3)) / k for k in (1, 2, 3))
    for _ in range(rng.poisson(1.0)):
        at = int(rng.uniform(0, n - rate // 20))
        burst = rng.normal(size=rate // 20) * np.exp(-np.arange(rate // 20) / (rate * 0.01)) * rng.uniform(1, 3)
        background[at:at + len(burst)] += burst
    background /= np.sqrt(np.mean(background ** 2)) + 1e-9

    sound = scene["sound"]
    fps = spec.fps
    # The object sounds while it moves (plus a little before and after).
    t_on, t_off = (scene["start_f"] - 2) / fps, (scene["stop_f"] + 2) / fps
    on = np.clip((t - t_on) / 0.02 + 0.5, 0, 1) * np.clip((t_off - t) / 0.02 + 0.5, 0, 1)  # 20 ms fades
    # Nearer is louder: a push fades out, a pull fades in.
    ramp = np.interp(t * fps, np.arange(spec.frames), scene["phase"])
    loudness = {0: 1.0 - 0.5 * ramp, 1: 0.5 + 0.5 * ramp}.get(scene["motion"], np.ones_like(ramp))
    source = np.zeros(n)
    if not sound["silent"]:
        source += _object_sound(scene["object"], n, rate, sound["pitch"], rng) * on * loudness
    signal = source / (np.sqrt(np.mean(source ** 2)) + 1e-9) * 10 ** (sound["snr_db"] / 20) if source.any() else source
    if sound["other"] is not None:  # someone else's object in the room
        other = _object_sound(sound["other"], n, rate, rng.uniform(0.85, 1.2), rng)
        signal = signal + other / (np.sqrt(np.mean(other ** 2)) + 1e-9) * 10 ** (rng.uniform(-8, 4) / 20)
    mix = background + signal
    mix *= rng.uniform(0.3, 0.6) / (np.abs(mix).max() + 1e-9)  # peak level varies like microphone gain
    return np.clip(mix, -0.95, 0.95).astype(np.float32)


def _object_sound(kind: int, n: int, rate: int, pitch: float, rng: np.random.Generator) -> np.ndarray:
    """The object's own sound over the whole clip: cup = high clinks, box = mid-band scraping, bottle = low harmonic slosh-hum."""
    t = np.arange(n) / rate
    out = np.zeros(n)
    if kind == 0:  # clinks: inharmonic partials at 2.5-3.5 kHz, decaying in tens of ms, 3-6 per second
        f0 = 2900.0 * pitch
        at = 0.0
        while True:
            at += rng.uniform(0.15, 0.35)
            if at >= n / rate:
                break
            k = int(at * rate)
            tail = t[: min(n - k, int(0.3 * rate))]
            decay = np.exp(-tail / rng.uniform(0.03, 0.06))
            out[k:k + len(tail)] += decay * (np.sin(2 * np.pi * f0 * tail) + 0.6 * np.sin(2 * np.pi * 2.71 * f0 * tail)) * rng.uniform(0.6, 1.0)
    elif kind == 1:  # scraping: band-passed noise at 0.6-1.6 kHz, rough amplitude modulation at 6-12 Hz
        spectrum = np.fft.rfft(rng.normal(size=n))
        freqs = np.fft.rfftfreq(n, 1 / rate)
        centre = 1000.0 * pitch
        spectrum *= np.exp(-0.5 * ((freqs - centre) / (0.3 * centre)) ** 2)
        out = np.fft.irfft(spectrum, n)
        out *= 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(6, 12) * t) ** 2
    else:  # slosh-hum: a harmonic tone at 250-450 Hz with slow vibrato
        f0 = 340.0 * pitch
        vibrato = 1.0 + 0.02 * np.sin(2 * np.pi * rng.uniform(3, 6) * t)
        phase = 2 * np.pi * np.cumsum(f0 * vibrato) / rate
        out = sum(np.sin(k * phase) / k for k in (1, 2, 3, 4))
    return out
