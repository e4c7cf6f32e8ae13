"""The modality registry: how decoded media of a segment becomes a teacher's input batch.

Each entry names its default backbone, its own options (`--flow`, `--flow-stack`, ...: the
command line takes them from here), its input channels and the preprocessing settings it derives
from the options and the backbone's data config (timm's, or a torchvision video preset's). Those settings are both what `make_inputs` uses
and what the cache stores as provenance, so the two cannot drift apart. Adding a modality is one
`register_modality` call in this file. Every modality runs through the one driver (extract/run.py,
extract/worker.py `run_task`), which asks it for each task's rows (extract/tasks.py `TaskRows`):
by default from decoded video through the backbone; with `has_model=False` (frames) its `make_inputs`
output is written as the rows themselves (uint8 frames); with `rows` (layout) from a source of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from egodistill.common import ExtractError, MediaError, file_sha256
from egodistill.extract.decode import Video, open_video, read_audio_track

if TYPE_CHECKING:
    from egodistill.extract.tasks import TaskRows
    from egodistill.extract.worker import SegmentJob, TaskSpec

FLOW_BOUND_PX = 20.0  # EPIC's released flow: clipped to +-20 px and scaled to [-1, 1]
AUDIO_RATE = 24000
AUDIO_WINDOW_SEC = 1.116  # the window centred on each frame in Radevski et al.
_CV2_INTERP = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}


class MediaSource:
    """One video file, opened lazily, with its audio track decoded at most once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._video: Video | None = None
        self._audio: np.ndarray | None = None

    @property
    def video(self) -> Video:
        if self._video is None:
            self._video = open_video(self.path)
        return self._video

    def audio(self) -> np.ndarray:
        if self._audio is None:
            self._audio = read_audio_track(self.path, sample_rate=AUDIO_RATE)
        return self._audio

    def close(self) -> None:
        if self._video is not None:
            self._video.close()


@dataclass(frozen=True)
class Option:
    """One setting of a modality; on the command line `--<name with dashes> VALUE`."""

    name: str
    default: Any
    help: str
    parse: Callable[[Any], Any] = str  # the given value (text from the command line) -> checked value; ValueError if bad

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Modality:
    name: str
    default_backbone: str
    in_chans: Callable[[dict], int]                   # options -> channels
    settings: Callable[[dict, dict], dict]            # (options, timm data config) -> preprocessing
    make_inputs: Callable[[MediaSource, np.ndarray, dict], np.ndarray]  # -> float32 [T, C, H, W]; without a model: the rows
    options: tuple[Option, ...] = ()
    has_model: bool = True  # False: no backbone is built or run; the rows are make_inputs' uint8 [T, H, W, 3] frames, or `rows`'
    row_shape: Callable[[dict], tuple[int, ...]] | None = None  # without a model: settings -> one row's shape, (D,) or (H, W, 3)
    # Rows from a source of the modality's own instead of decoded video (layout: the box file), and the video
    # names in that source, matched to the manifest's by extract/names.py (each job's `name`).
    rows: Callable[[TaskSpec, list[SegmentJob], str], TaskRows] | None = None
    names: Callable[[dict, dict], Iterable[str]] | None = None  # (options, settings) -> the source's video names
    # Recorded settings -> the options that give them again: predict extracts new videos as a teacher was.
    recorded_options: Callable[[dict], dict] = lambda settings: {}

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """Every option of this modality, the given ones checked, the others at their defaults."""
        known = {o.name: o for o in self.options}
        for name in given:
            if name not in known:
                flag = "--" + name.replace("_", "-")
                raise ExtractError(f"{flag} is not an option of --modality {self.name} (its options: {', '.join(o.flag for o in self.options) or 'none'})")
        resolved = {}
        for name, option in known.items():
            value = given.get(name, option.default)
            try:
                resolved[name] = option.parse(value) if value is not None else None
            except ValueError as err:
                raise ExtractError(f"{option.flag} {value!r}: {err}") from None
        return resolved


_REGISTRY: dict[str, Modality] = {}


def register_modality(modality: Modality) -> Modality:
    _REGISTRY[modality.name] = modality
    return modality


def get_modality(name: str) -> Modality:
    if name not in _REGISTRY:
        raise ExtractError(f"--modality {name!r} is unknown: choose one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def options_help() -> str:
    """The options of every modality, one line each, for `egodistill extract --help`."""
    lines = [f"{o.flag} (--modality {m.name}, default {o.default}): {o.help}" for m in _REGISTRY.values() for o in m.options]
    return "Modality options:\n\n" + "\n\n".join(lines)


def _at_least_one(value: Any) -> int:
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError("give a whole number >= 1")
    return number


def _positive(value: Any) -> float:
    try:
        number = float(str(value))
    except ValueError:
        number = float("nan")
    if not 0 < number < float("inf"):
        raise ValueError("give a number of seconds > 0")
    return number


# --- shared geometry -------------------------------------------------------------------

def _geometry(data_cfg: dict) -> dict:
    _, h, w = data_cfg["input_size"]
    if "preset" in data_cfg:  # a torchvision video model's weights preset: resize to [short side] or exactly [h, w], then crop
        resize = [int(v) for v in data_cfg["resize_size"]]
        size = {"resize_short": resize[0]} if len(resize) == 1 else {"resize": resize}
        return {"input_size": [h, w], **size, "interpolation": data_cfg.get("interpolation", "bilinear"), "preset": data_cfg["preset"]}
    crop_pct = float(data_cfg.get("crop_pct", 1.0))
    return {"input_size": [h, w], "resize_short": int(round(min(h, w) / crop_pct)), "interpolation": data_cfg.get("interpolation", "bilinear")}


def _resize_short(image: np.ndarray, short: int, interpolation: str) -> np.ndarray:
    h, w = image.shape[:2]
    scale = short / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # INTER_AREA when shrinking avoids aliasing; the backbone's own filter when enlarging.
    flag = cv2.INTER_AREA if scale < 1 else _CV2_INTERP.get(interpolation, cv2.INTER_LINEAR)
    return cv2.resize(image, size, interpolation=flag)


def _resize(image: np.ndarray, settings: dict) -> np.ndarray:
    if "resize" not in settings:
        return _resize_short(image, settings["resize_short"], settings["interpolation"])
    h, w = settings["resize"]
    flag = cv2.INTER_AREA if h * w < image.shape[0] * image.shape[1] else _CV2_INTERP.get(settings["interpolation"], cv2.INTER_LINEAR)
    return cv2.resize(image, (w, h), interpolation=flag)


def _centre_crop(image: np.ndarray, size: list[int]) -> np.ndarray:
    h, w = image.shape[:2]
    ch, cw = size
    top, left = max(0, (h - ch) // 2), max(0, (w - cw) // 2)
    return image[top: top + ch, left: left + cw]


# --- rgb -------------------------------------------------------------------------------
# The model's own reference transform, applied as the library defines it, not re-implemented: for a timm
# backbone `timm.data.create_transform` (eval) on PIL frames; for a torchvision video model its weights
# preset. An OpenCV look-alike (round() for floor, area for PIL's antialiased bicubic, crop_mode ignored)
# put rows at cosine 0.993 from the reference on real frames (issue 17); these give 1.0.

def _rgb_settings(options: dict, data_cfg: dict) -> dict:
    if "preset" in data_cfg:  # a torchvision video model: its weights preset's transform
        return {**_geometry(data_cfg), "mean": list(data_cfg["mean"]), "std": list(data_cfg["std"]), "transform": "torchvision preset"}
    _, h, w = data_cfg["input_size"]
    return {"input_size": [h, w], "interpolation": data_cfg.get("interpolation", "bilinear"), "crop_pct": float(data_cfg.get("crop_pct", 1.0)),
            "crop_mode": data_cfg.get("crop_mode", "center"), "mean": list(data_cfg["mean"]), "std": list(data_cfg["std"]),
            "transform": "timm.data.create_transform"}


@lru_cache(maxsize=8)
def _reference_transform(key: str) -> Callable:
    """The model's own eval transform for rgb settings (as JSON, to be hashable): PIL image -> [3, H, W] tensor
    (timm), or uint8 [T, C, H, W] tensor -> [C, T, H, W] (a torchvision preset)."""
    import json

    settings = json.loads(key)
    if settings["transform"] == "torchvision preset":
        from torchvision.models import video

        enum, member = settings["preset"].split(".")
        return getattr(getattr(video, enum), member).transforms()
    import timm.data

    return timm.data.create_transform(
        input_size=(3, *settings["input_size"]), interpolation=settings["interpolation"], crop_pct=settings["crop_pct"],
        crop_mode=settings["crop_mode"], mean=tuple(settings["mean"]), std=tuple(settings["std"]), is_training=False,
    )


def rgb_preprocess(frames: np.ndarray, settings: dict) -> np.ndarray:
    """Decoded uint8 [T, H, W, 3] frames -> the model's input, float32 [T, 3, h, w], by its reference transform."""
    import json

    import torch
    from PIL import Image

    transform = _reference_transform(json.dumps(settings, sort_keys=True))
    with torch.inference_mode():
        if settings["transform"] == "torchvision preset":
            out = transform(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)).transpose(0, 1)
        else:
            out = torch.stack([transform(Image.fromarray(f)) for f in frames])
    return np.ascontiguousarray(out.numpy(), dtype=np.float32)


def _rgb_frames(source: MediaSource, indices: np.ndarray, settings: dict) -> np.ndarray:
    """The frames modality's rows: the decoded frames resized (OpenCV: area when shrinking) and centre-cropped
    to settings["input_size"], uint8 [T, H, W, 3]. They are pixels a student trains on, not a teacher's input,
    so they keep OpenCV's geometry (fast, and what the stored bytes have always been)."""
    return np.stack([_centre_crop(_resize(f, settings), settings["input_size"]) for f in source.video.frames(indices)])


def _rgb_inputs(source: MediaSource, indices: np.ndarray, settings: dict) -> np.ndarray:
    return rgb_preprocess(source.video.frames(indices), settings)


register_modality(Modality("rgb", "resnet50", lambda o: 3, _rgb_settings, _rgb_inputs))


# --- frames (the sampled RGB frames themselves, for students that train on pixels) ------

# 128: a 112 x 112 crop (the input of r2plus1d_18, r3d_18, mc3_18 and of small students) keeps a 16 px
# margin for random crops, the 0.875 crop fraction of the usual 224-of-256; at 128 x 128 x 3 a frame is
# 48 KiB raw. Larger students take --frame-size 256 (224 crops).
DEFAULT_FRAME_SIZE = 128


def _frames_settings(options: dict, data_cfg: dict) -> dict:
    # Short side to S, then a centre S x S square: one stored shape for videos of any aspect (a Zarr
    # array has one row shape), and students crop squares anyway; the sides of wide frames are dropped.
    size = options["frame_size"]
    return {"resize_short": size, "input_size": [size, size], "interpolation": "bilinear", "shrink": "area", "crop": "centre",
            "dtype": "uint8", "channels": "RGB"}


register_modality(Modality("frames", "none", lambda o: 3, _frames_settings, _rgb_frames, has_model=False, row_shape=lambda s: (*s["input_size"], 3), options=(
    Option("frame_size", DEFAULT_FRAME_SIZE, "stored frames are S x S: short side resized to S (area when shrinking, bilinear when enlarging), "
           "centre-cropped square; keep S above the student's crop (112 -> 128) for random crops", _at_least_one),
), recorded_options=lambda s: {"frame_size": s["input_size"][0]}))


# --- flow ------------------------------------------------------------------------------

def _flow_method(value: Any) -> str:
    if value not in FLOW_METHODS:
        raise ValueError(f"unknown flow method: choose one of {', '.join(FLOW_METHODS)}")
    return str(value)


def _flow_settings(options: dict, data_cfg: dict) -> dict:
    method = options["flow"]
    if method == "tvl1" and not hasattr(cv2, "optflow"):
        raise ExtractError("--flow tvl1 needs opencv-contrib: pip install opencv-contrib-python-headless, or use --flow dis")
    settings = {**_geometry(data_cfg), "method": method, "stack": options["flow_stack"], "bound_px": FLOW_BOUND_PX}
    if method.startswith("raft"):
        weights = options["flow_weights"]
        if not weights or not Path(weights).is_file():
            raise ExtractError(f"--flow {method} needs --flow-weights FILE (a torchvision {method} state dict; no hub is used): got {weights!r}")
        settings.update(weights=file_sha256(weights), weights_file=str(Path(weights).resolve()))
    return settings


# One OpenCV flow object per decode thread: they keep state between calls, and sharing one across the
# worker's decode threads crashes the process.
_FLOW_OBJECTS = threading.local()


def _per_thread(name: str, create: Callable):
    if not hasattr(_FLOW_OBJECTS, name):
        setattr(_FLOW_OBJECTS, name, create())
    return getattr(_FLOW_OBJECTS, name)


def _dis(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    return _per_thread("dis", lambda: cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)).calc(prev, nxt, None)


def _tvl1(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    if not hasattr(cv2, "optflow"):
        raise ExtractError("--flow tvl1 needs opencv-contrib: pip install opencv-contrib-python-headless, or use --flow dis")
    return _per_thread("tvl1", cv2.optflow.DualTVL1OpticalFlow_create).calc(prev, nxt, None)


@lru_cache(maxsize=2)
def _raft_model(arch: str, weights_file: str):
    import torch
    from torchvision.models import optical_flow

    from egodistill.backbones import read_state_dict

    model = getattr(optical_flow, arch)(weights=None)
    model.load_state_dict(read_state_dict(Path(weights_file)))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.eval().to(device), device


def _raft_flows(frames: dict[int, np.ndarray], pairs: list[tuple[int, int]], settings: dict) -> list[np.ndarray]:
    """All pairs of one segment in one batch through torchvision's RAFT (on the GPU when there is one)."""
    import torch

    model, device = _raft_model(settings["method"], settings["weights_file"])
    first = np.stack([frames[a] for a, _ in pairs])
    second = np.stack([frames[b] for _, b in pairs])
    h, w = first.shape[1:3]
    # RAFT needs sizes divisible by 8 and at least 128 (its correlation pyramid).
    pad_h, pad_w = max(128, -(-h // 8) * 8) - h, max(128, -(-w // 8) * 8) - w

    def tensor(x: np.ndarray):
        t = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        return torch.nn.functional.pad(t, (0, pad_w, 0, pad_h), mode="replicate").to(device)

    with torch.inference_mode():
        flow = model(tensor(first), tensor(second))[-1][:, :, :h, :w]
    return list(flow.permute(0, 2, 3, 1).cpu().numpy())


_PAIRWISE: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {"dis": _dis, "tvl1": _tvl1}
FLOW_METHODS = ("dis", "tvl1", "raft_large", "raft_small")


def _flow_inputs(source: MediaSource, indices: np.ndarray, settings: dict) -> np.ndarray:
    video = source.video
    stack, last = settings["stack"], video.num_frames - 1
    # Pair j of row t: frame indices[t]+j -> indices[t]+j+1 (clipped at the video's end).
    starts = np.minimum(indices[:, None] + np.arange(stack)[None, :], last)
    pairs = [(int(i), int(min(i + 1, last))) for i in starts.ravel()]
    needed = np.unique(np.array(pairs).ravel())
    resized = {int(i): _resize(f, settings) for i, f in zip(needed, video.frames(needed))}
    if settings["method"].startswith("raft"):
        flows = _raft_flows(resized, pairs, settings)
    else:
        grey = {i: cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for i, f in resized.items()}
        flows = [_PAIRWISE[settings["method"]](grey[a], grey[b]) for a, b in pairs]
    bound = settings["bound_px"]
    crops = [np.clip(_centre_crop(f, settings["input_size"]), -bound, bound) / bound for f in flows]
    rows = [np.concatenate(crops[r * stack:(r + 1) * stack], axis=2).transpose(2, 0, 1) for r in range(len(starts))]
    return np.ascontiguousarray(np.stack(rows), dtype=np.float32)


register_modality(Modality("flow", "resnet50", lambda o: 2 * o["flow_stack"], _flow_settings, _flow_inputs, options=(
    Option("flow", "dis", "optical flow: dis (CPU), tvl1 (opencv-contrib), raft_large or raft_small (torchvision; needs --flow-weights)", _flow_method),
    Option("flow_stack", 1, "flow pairs stacked per row (2L input channels)", _at_least_one),
    Option("flow_weights", None, "torchvision RAFT state dict for --flow raft_*"),
), recorded_options=lambda s: {"flow": s["method"], "flow_stack": s["stack"]}))  # RAFT's file is recorded by its sha256 only


# --- audio -----------------------------------------------------------------------------

def _audio_settings(options: dict, data_cfg: dict) -> dict:
    _, h, w = data_cfg["input_size"]
    return {
        "input_size": [h, w], "sample_rate": AUDIO_RATE, "window_sec": options["audio_window"],
        "n_fft": 1024, "win_length": 160, "hop_length": 80, "n_mels": 128, "power": 2.0, "scale": "dB, standardised per window",
    }


def _audio_inputs(source: MediaSource, indices: np.ndarray, settings: dict) -> np.ndarray:
    import librosa  # slow to import; only audio workers pay for it

    track = source.audio()
    rate = settings["sample_rate"]
    half = int(round(settings["window_sec"] * rate / 2))
    centres = np.round(source.video.frame_times(indices) * rate).astype(np.int64)
    if centres.max() >= len(track):  # the picture goes on but the sound stopped: a cut or broken file
        raise MediaError(f"audio of {source.path} ends at {len(track) / rate:.2f} s, before frame time {centres.max() / rate:.2f} s: the file may be truncated")
    padded = np.pad(track, (half, half))
    h, w = settings["input_size"]
    rows = []
    for c in centres:
        window = padded[c: c + 2 * half]  # centred on the frame: padded[c + half] is sample c
        if len(window) < 2 * half:
            window = np.pad(window, (0, 2 * half - len(window)))
        mel = librosa.feature.melspectrogram(
            y=window, sr=rate, n_fft=settings["n_fft"], win_length=settings["win_length"],
            hop_length=settings["hop_length"], n_mels=settings["n_mels"], power=settings["power"],
        )
        db = librosa.power_to_db(mel, ref=1.0, amin=1e-10)
        db = (db - db.mean()) / (db.std() + 1e-5)
        rows.append(cv2.resize(db.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)[None])
    return np.ascontiguousarray(np.stack(rows), dtype=np.float32)


register_modality(Modality("audio", "resnet18", lambda o: 1, _audio_settings, _audio_inputs, options=(
    Option("audio_window", AUDIO_WINDOW_SEC, "seconds of sound centred on each frame", _positive),
), recorded_options=lambda s: {"audio_window": s["window_sec"]}))


# --- layout (boxes, no model: extract/boxes.py) ----------------------------------------

def _layout_inputs(*_args):
    raise ExtractError("--modality layout decodes no video: its rows come from --boxes")


def _register_layout() -> None:
    from egodistill.extract import boxes

    register_modality(Modality(
        "layout", "boxes", lambda o: 0, lambda options, _: boxes.layout_settings(options), _layout_inputs, has_model=False,
        row_shape=boxes.box_row_shape, rows=boxes.box_rows, names=boxes.box_names, options=(
            Option("boxes", None, "box annotations: Something-Else JSON or a CSV video,time_sec|frame,x1,y1,x2,y2,category[,score]"),
            Option("max_boxes", boxes.DEFAULT_MAX_BOXES, "boxes per frame (K); fewer are padded", _at_least_one),
            Option("box_fps", boxes.SOMETHING_ELSE_FPS, "rate of the box file's 1-based frame numbers (Something-Else: 12)", _positive),
            Option("frame_size", None, "WIDTHxHEIGHT dividing the coordinates (default: the box file's width/height, else the video's header)", boxes.parse_frame_size),
        ),
    ))


_register_layout()
