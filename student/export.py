"""`export`: a trained student as one TorchScript file that needs only torch to run (or, optionally, ONNX).

The exported module maps the RGB frames of one segment, uint8 [T, 3, H, W] at any H, W, to {head: logits
[classes]}. An end-to-end student's preprocessing is the one `evaluate` scores it with (student/network.py): the
centred square of the backbone's crop fraction of the short side, resized to the student's input size by
roi_align's 2x2-sample bilinear average (rewritten here with grid_sample so that loading needs no
torchvision), scaled to [0, 1] and normalised with the mean/std of the backbone's data config. The file
also records, as `_extra_files["egodistill.json"]` and as module attributes, the heads, the frames per
segment the student was trained on (sampled evenly over the segment, as the cache stores them) and the
preprocessing constants.

    model = torch.jit.load("model.pt"); logits = model(frames)   # frames: torch.uint8 [T, 3, H, W]

A frozen-feature student (a head over one rgb teacher's cached features) exports as its input teacher's
backbone composed with the trained head (`ExportedFeatureStudent`). The backbone is rebuilt through
`create_backbone` from the teacher's provenance in the training cache (backbone, in_chans, seed, weights: a
weights file is given again with `--weights` and must have the recorded sha256, as `predict` checks for new
videos). Extraction's transform (extract/modalities.py: timm's `create_transform` on PIL frames, or a torchvision
video preset on tensors) is rewritten in torch ops: the short side resized as torchvision's `Resize` sizes it,
by Pillow's own 8-bit resampling (`pil_resample`: its filters, fixed-point weights and rounding; a preset: torch's
unantialiased interpolate, rounded, as torchvision runs it), torchvision's centre crop, /255 and the mean/std. Rows are rounded to
float16 as the cache stores them, the window of rows the head reads is the one `evaluate` reads (student/data.py
`frame_indices`, centred), and the head is the trained `Student` itself, traced. `from_features(rows [R, D])`
runs the head alone on a segment's rows (cached ones, for a parity check); `preprocess` and `rows` are exposed
too. Give the segment's frames sampled as the teacher sampled them (`sampling` in the metadata: N frames at the
centres of N equal parts of the segment); a clip backbone's rows are its windows' time steps, as extraction made them.

    model = torch.jit.load("model.pt"); logits = model(frames)   # frames: torch.uint8 [T, 3, H, W] RGB

Measured (tests/test_export_frozen.py; bench/RESULTS.md "Export"): the baked-in transform gives extraction's input
values exactly (max difference 0) on a generated 64x48 clip and on real 320x240, 426x240 and 1920x1080 videos, for
timm's bilinear and bicubic transforms (crop 0.95, 0.875) and a torchvision video preset. On decoded frames the
module's rows equal the cached ones (an image teacher; a clip teacher: up to a float16 rounding flip, its windows
being batched otherwise in extraction) and its logits are evaluate's within 2e-7 (test_resnet) and 1.1e-4 (r3d_18).
A scripted module's first two calls are slower (TorchScript's profiling executor warms up).

`--format onnx --frame-size WxH` writes a frozen-feature image student as an ONNX graph instead (`_OnnxFeatureStudent`:
one frame size, exactly the `frames` frames the head reads, Pillow's resampling as two dense float64 matmuls), with
its metadata in `<out>.json`; onnxruntime gives evaluate's logits within 1.6e-5 (tests, with the `onnx` extra).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from egodistill.common import EgodistillError, atomic_write, check_choice, dumps, first_line
from egodistill.student.model import Student
from egodistill.student.network import FramesStudent, eval_crop_fraction

META_FILE = "egodistill.json"
FORMATS = ("torchscript", "onnx")


class ExportError(EgodistillError):
    """export cannot write this run as a module."""


@dataclass
class ExportConfig:
    run: str
    out: str
    weights: list[str] = field(default_factory=list)  # a frozen-feature student's input teacher's weights file, given again
    cache: str | None = None                          # the cache holding that teacher (default: the run's training cache)
    format: str = "torchscript"                       # or "onnx": a frozen-feature image student at one frame size
    frame_size: tuple[int, int] | None = None         # onnx: the (width, height) of the frames the graph takes


class ExportedStudent(nn.Module):
    """Frames uint8 [T, 3, H, W] -> {head: logits [classes]}: an end-to-end student with its evaluation view baked in."""

    def __init__(self, student: FramesStudent, crop_fraction: float) -> None:
        super().__init__()
        self.backbone = _scriptable(student)
        self.heads = student.heads
        self.register_buffer("mean", student.mean.detach().clone())
        self.register_buffer("std", student.std.detach().clone())
        # Plain attributes: TorchScript infers their types and keeps them on the saved module.
        self.size = int(student.size)
        self.clip = bool(student.clip)
        self.crop_fraction = float(crop_fraction)
        self.frames = int(student.cfg.frames)
        self.head_names = list(student.cfg.heads)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T, 3, H, W] -> normalised float32 [T, 3, S, S]: torchvision's roi_align (aligned, 2x2 samples a
        pixel) of the centred box, as the student's own preprocess takes it, written with torch ops only."""
        check_frames(frames)
        t, h, w = frames.shape[0], frames.shape[2], frames.shape[3]
        images = frames.float()
        side = self.crop_fraction * float(min(h, w))
        # The box as fractions of W and H in float32 (student/data.py centre_boxes), then in pixels.
        fractions = torch.tensor([0.5 - side / (2 * w), 0.5 - side / (2 * h), 0.5 + side / (2 * w), 0.5 + side / (2 * h)], dtype=torch.float32)
        box = fractions * torch.tensor([float(w), float(h), float(w), float(h)], dtype=torch.float32) - 0.5  # aligned=True: pixel centres
        steps = (torch.arange(2 * self.size, dtype=torch.float32) + 0.5) / 2.0  # 2 samples per output pixel, at 1/4 and 3/4 of its bin
        xs = box[0] + steps * ((box[2] - box[0]) / self.size)
        ys = box[1] + steps * ((box[3] - box[1]) / self.size)
        # roi_align clamps a sample to the edge pixels, as padding "border" does; a centred box never leaves the frame.
        gx = xs / float(w - 1) * 2.0 - 1.0
        gy = ys / float(h - 1) * 2.0 - 1.0
        grid = torch.stack([gx.view(1, -1).expand(gy.numel(), gx.numel()), gy.view(-1, 1).expand(gy.numel(), gx.numel())], dim=-1)
        grid = grid.to(images.device).unsqueeze(0).expand(t, gy.numel(), gx.numel(), 2)
        samples = torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)
        out = torch.nn.functional.avg_pool2d(samples, 2)
        return (out / 255.0 - self.mean) / self.std

    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        t = frames.shape[0]
        images = self.preprocess(frames)
        if self.clip:  # [1, 3, T, S, S] -> [1, T', D]
            pooled = self.backbone(images.view(1, t, 3, self.size, self.size).transpose(1, 2)).mean(dim=1)
        else:  # one image per frame, mean over the window
            pooled = self.backbone(images).view(1, t, -1).mean(dim=1)
        out: dict[str, torch.Tensor] = {}
        for name, head in self.heads.items():
            out[name] = head(pooled)[0]
        return out


def check_frames(frames: torch.Tensor) -> None:
    """Refuse what is not RGB frames uint8 [T, 3, H, W] (T >= 1) in one line: float frames would be read as 0..255
    values silently, and [T, H, W, 3] would fail deep inside the resize."""
    if frames.dim() != 4 or frames.shape[1] != 3 or frames.shape[0] < 1:
        raise ValueError("the exported student takes RGB frames [T, 3, H, W] with T >= 1, got shape " + str(list(frames.shape))
                         + ": permute [T, H, W, 3] frames with .permute(0, 3, 1, 2)")
    if frames.dtype != torch.uint8:  # (TorchScript prints a dtype as a number: it is left out of the message)
        raise ValueError("the exported student takes uint8 frames (0..255), got another dtype: decoded frames are uint8; "
                         "0..1 floats convert with (x * 255).round().to(torch.uint8)")


def _scriptable(student: FramesStudent) -> nn.Module:
    """The end-to-end student's backbone as TorchScript (a traced clip model then takes exactly the run's frames per segment)."""
    t, s = student.cfg.frames, student.size
    return _torchscript(student.backbone, torch.zeros(1, 3, t, s, s) if student.clip else torch.zeros(t, 3, s, s), student.cfg.backbone)


def _torchscript(backbone: nn.Module, example: torch.Tensor, name: str, script: bool = True) -> nn.Module:
    """A backbone as TorchScript: scripted where its code allows (and `script`), else traced at `example`'s shape."""
    backbone = backbone.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation and tracer notices
        try:
            if not script:
                raise TypeError("trace it")
            return torch.jit.script(backbone)
        except Exception:  # noqa: BLE001 - any failure to script: trace instead
            try:
                with torch.no_grad():
                    return torch.jit.trace(backbone, example)
            except Exception as err:  # noqa: BLE001 - torch's tracer fails in many ways, all meaning the same here
                raise ExportError(f"backbone {name} can be neither scripted nor traced ({first_line(err, 160)}): "
                                  "export supports backbones TorchScript can hold") from err


# --- frozen-feature students: the input teacher's backbone, its extraction transform, the trained head ----------

@dataclass(frozen=True)
class FramePreprocess:
    """Extraction's rgb transform (extract/modalities.py) as the numbers the exported module runs, and records."""

    transform: str               # "timm.data.create_transform" (on PIL frames) or "torchvision preset" (on uint8 tensors)
    resize_short: int            # the short side after resizing (the long one as torchvision's Resize sizes it); 0: `resize`
    resize: tuple[int, int]      # an exact (h, w) (timm's squash mode, a preset's [h, w]); (0, 0) with resize_short
    crop: tuple[int, int]        # the centred (h, w) crop: the backbone's input size
    interpolation: str           # bilinear or bicubic
    resampler: str               # "pil": Pillow's own 8-bit resampling (timm); "torch": interpolate, unantialiased, rounded (a preset)
    mean: tuple[float, ...]
    std: tuple[float, ...]


def frame_preprocess(settings: dict, key: str) -> FramePreprocess:
    """The rgb teacher `key`'s recorded preprocessing as a `FramePreprocess`; ExportError for a transform the module
    cannot reproduce in torch ops."""
    transform = settings.get("transform")
    interpolation = str(settings.get("interpolation", "bilinear"))
    if transform not in ("timm.data.create_transform", "torchvision preset"):
        raise ExportError(f"teacher {key}'s features were not made by egodistill's rgb transform (preprocessing {transform!r}; imported?): "
                          "export rebuilds only a teacher `egodistill extract --modality rgb` made")
    if interpolation not in ("bilinear", "bicubic"):
        raise ExportError(f"teacher {key} resizes frames by {interpolation!r} interpolation: export bakes in bilinear and bicubic only")
    h, w = (int(v) for v in settings["input_size"])
    mean, std = tuple(float(v) for v in settings["mean"]), tuple(float(v) for v in settings["std"])
    if transform == "torchvision preset":
        exact = tuple(int(v) for v in settings["resize"]) if "resize" in settings else (0, 0)
        return FramePreprocess(transform, int(settings.get("resize_short", 0)), exact, (h, w), interpolation, "torch", mean, std)
    crop_pct, mode = float(settings.get("crop_pct") or 0.875), settings.get("crop_mode") or "center"  # timm's defaults for None
    if crop_pct > 1:
        raise ExportError(f"teacher {key}'s transform pads its crop (crop_pct {crop_pct} > 1): export bakes in crops inside the frame only")
    if mode == "squash":
        return FramePreprocess(transform, 0, (math.floor(h / crop_pct), math.floor(w / crop_pct)), (h, w), interpolation, "pil", mean, std)
    if mode != "center" or h != w:
        raise ExportError(f"teacher {key}'s transform is timm's crop_mode {mode!r} at {h}x{w}: export bakes in the centre crop of a square "
                          "input and the squash mode only")
    return FramePreprocess(transform, math.floor(h / crop_pct), (0, 0), (h, w), interpolation, "pil", mean, std)


def window_rows(rows: int, frames: int, placement: float) -> torch.Tensor:
    """The rows of a segment of `rows` rows that a head of `frames` rows reads: student/data.py `frame_indices` for one
    segment at window placement `placement` (evaluate's: 0.5, centred), in TorchScript."""
    rows = max(rows, 1)
    steps = torch.arange(frames)
    stride = max(rows // frames, 1)
    room = rows - (stride * (frames - 1) + 1)
    if room < 0:  # fewer rows than frames: spread and repeat
        return (steps * rows) // frames
    offset = min(int(placement * float(room + 1)), room)  # placement >= 0: int() is floor
    return offset + stride * steps


# Pillow's 8-bit resampling (libImaging/Resample.c), which timm's eval transform runs on every frame: per output
# pixel, filter weights over the source pixels in its support (widened by the scale when shrinking: PIL always
# antialiases), normalised, turned into 22-bit fixed point, summed in integers from half a unit and shifted back.
# Rewritten with its own constants and order of operations, so the baked-in resize gives PIL's bytes, not a
# look-alike's (torch's antialiased interpolate rounds ties differently: up to 2 levels on ~10 % of pixels).
# Pillow's PRECISION_BITS for 8-bit images is 32 - 8 - 2 = 22 (a literal below: TorchScript reads no globals).


def _pil_filter(x: torch.Tensor, bicubic: bool) -> torch.Tensor:
    x = x.abs()
    zero = torch.zeros_like(x)
    if bicubic:  # Pillow's bicubic_filter, a = -0.5
        a = -0.5
        near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
        far = (((x - 5) * x + 8) * x - 4) * a
        return torch.where(x < 1.0, near, torch.where(x < 2.0, far, zero))
    return torch.where(x < 1.0, 1.0 - x, zero)  # bilinear_filter


def pil_coefficients(in_size: int, out_size: int, bicubic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis: source indices and integer fixed-point weights, [out, taps]."""
    scale = float(in_size) / float(out_size)
    filterscale = max(scale, 1.0)
    support = (2.0 if bicubic else 1.0) * filterscale
    taps = int(math.ceil(support)) * 2 + 1
    centre = (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale
    first = torch.clamp(torch.trunc(centre - support + 0.5), min=0.0)  # C's (int) truncates; PIL then clamps at 0
    count = torch.clamp(torch.trunc(centre + support + 0.5), max=float(in_size)) - first
    offsets = torch.arange(taps, dtype=torch.float64).view(1, -1)
    weights = _pil_filter((offsets + first.view(-1, 1) - centre.view(-1, 1) + 0.5) * (1.0 / filterscale), bicubic)
    weights = torch.where(offsets < count.view(-1, 1), weights, torch.zeros_like(weights))
    total = torch.zeros(out_size, dtype=torch.float64)
    for k in range(taps):  # summed in PIL's order: the fixed-point weights below hinge on the last bit
        total = total + weights[:, k]
    weights = torch.where(total.view(-1, 1) != 0.0, weights / total.view(-1, 1), weights)
    scaled = weights * float(1 << 22)
    fixed = torch.where(weights < 0, torch.trunc(scaled - 0.5), torch.trunc(scaled + 0.5)).long()
    index = torch.clamp(first.long().view(-1, 1) + torch.arange(taps).view(1, -1), max=in_size - 1)  # past `count`: weight 0
    return index, fixed


def pil_resample(pixels: torch.Tensor, dim: int, out_size: int, bicubic: bool) -> torch.Tensor:
    """Pixels [N, C, H, W] (integers 0..255, float64) resized along `dim` (3: width, 2: height) to `out_size`, as
    Pillow's ResampleHorizontal/Vertical_8bpc write them. Its integer sums are done as float64 matmuls (exact: they
    stay below 2^33), output columns 16 at a time against the band of source columns they read (a 1080p frame: ~0.25 GFLOP)."""
    index, fixed = pil_coefficients(int(pixels.shape[dim]), out_size, bicubic)
    moved = pixels.transpose(dim, 3).contiguous()
    x = moved.reshape(-1, moved.shape[3])  # one source line per row: a plain strided matrix for BLAS
    parts: list[torch.Tensor] = []
    for start in range(0, out_size, 16):
        stop = min(start + 16, out_size)
        lo, hi = int(index[start:stop].min()), int(index[start:stop].max()) + 1
        band = torch.zeros(hi - lo, stop - start, dtype=torch.float64)
        columns = torch.arange(stop - start).view(-1, 1).expand(stop - start, index.shape[1])
        band.index_put_((index[start:stop] - lo, columns), fixed[start:stop].double(), accumulate=True)  # taps past a pixel's count weigh 0
        parts.append(torch.mm(x[:, lo:hi], band.to(x.device)))
    total = torch.cat(parts, dim=1) + float(1 << 21)  # half a unit: round to nearest
    out = torch.clamp(torch.floor(total / float(1 << 22)), 0.0, 255.0)  # clip8: >> 22, clamped
    return out.view(moved.shape[0], moved.shape[1], moved.shape[2], out_size).transpose(dim, 3)


def _half_even(twice: int) -> int:
    """round(twice / 2) as Python rounds (half to even): torchvision's centre-crop offset."""
    half = twice // 2
    return half + 1 if twice % 2 == 1 and half % 2 == 1 else half


class _OneInputHead(nn.Module):
    """The trained head on one segment's rows [1, F, D] of its one input, present: what evaluate runs (traced)."""

    def __init__(self, student: Student) -> None:
        super().__init__()
        self.student = student

    def forward(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.student([rows], torch.ones_like(rows[:, :1, 0], dtype=torch.bool))  # on rows' device, also once traced


class ExportedFeatureStudent(nn.Module):
    """Frames uint8 [T, 3, H, W] -> {head: logits [classes]}: a frozen-feature student with its input teacher's
    backbone and extraction transform baked in (see the module doc)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, plan: FramePreprocess, frames: int, head_names: list[str],
                 clip_frames: int = 0, clip_stride: int = 1, placement: float = 0.5) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.register_buffer("mean", torch.tensor(plan.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(plan.std, dtype=torch.float32).view(1, 3, 1, 1))
        # Plain attributes: TorchScript infers their types and keeps them on the saved module.
        self.resize_short = int(plan.resize_short)
        self.resize_h, self.resize_w = int(plan.resize[0]), int(plan.resize[1])
        self.crop_h, self.crop_w = int(plan.crop[0]), int(plan.crop[1])
        self.interpolation = str(plan.interpolation)
        self.resampler = str(plan.resampler)
        self.frames = int(frames)
        self.head_names = list(head_names)
        self.clip_frames, self.clip_stride = int(clip_frames), int(clip_stride)  # 0: an image backbone, one row per frame
        self.placement = float(placement)

    def resized_size(self, h: int, w: int) -> list[int]:
        """(h, w) after the resize: torchvision's Resize(short side) keeps the aspect, flooring the long side."""
        if self.resize_short == 0:
            return [self.resize_h, self.resize_w]
        short = self.resize_short
        if w <= h:
            return [int(short * h / w), short]
        return [short, int(short * w / h)]

    @torch.jit.export
    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T, 3, H, W] -> the backbone's input, float32 [T, 3, h, w], as extraction's transform makes it."""
        check_frames(frames)
        h, w = int(frames.shape[2]), int(frames.shape[3])
        size = self.resized_size(h, w)
        images = frames.float()
        if size != [h, w]:  # torchvision's Resize returns an image already of its size untouched
            if self.resampler == "pil":
                # Pillow resizes the width, then the height, each pass written to uint8 (PIL skips a pass whose size holds).
                pixels = frames.double()
                if size[1] != w:
                    pixels = pil_resample(pixels, 3, size[1], self.interpolation == "bicubic")
                if size[0] != h:
                    pixels = pil_resample(pixels, 2, size[0], self.interpolation == "bicubic")
                images = pixels.float()
            else:  # torchvision on a uint8 tensor: one float pass, unantialiased as its video presets ask, rounded back to uint8
                images = torch.nn.functional.interpolate(images, size=size, mode=self.interpolation, align_corners=False)
                images = torch.round(images).clamp(0.0, 255.0)
        top = _half_even(int(images.shape[2]) - self.crop_h)
        left = _half_even(int(images.shape[3]) - self.crop_w)
        images = images[:, :, top:top + self.crop_h, left:left + self.crop_w]
        return (images / 255.0 - self.mean) / self.std

    @torch.jit.export
    def rows(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T, 3, H, W] -> the teacher's rows [R, D] (R = T for an image backbone; a clip backbone's windows'
        time steps), rounded to float16 as the cache stores them (the head was trained on such rows), as float32."""
        images = self.preprocess(frames)
        if self.clip_frames == 0:
            return self.backbone(images).half().float()
        t = images.shape[0]
        # extract/sampling.py `clip_windows`: windows of clip_frames consecutive frames, clip_stride apart, the last frame repeated.
        starts = torch.arange(0, max(t - self.clip_frames, 0) + 1, self.clip_stride)
        windows = torch.clamp(starts.view(-1, 1) + torch.arange(self.clip_frames).view(1, -1), max=t - 1).to(images.device)
        parts: list[torch.Tensor] = []
        for i in range(windows.shape[0]):  # one clip at a time: the traced clip model takes a batch of one
            parts.append(self.backbone(images.index_select(0, windows[i]).transpose(0, 1).unsqueeze(0))[0])
        return torch.cat(parts, dim=0).half().float()

    @torch.jit.export
    def from_features(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """A segment's teacher rows [R, D] (the cache's, or `rows`') -> {head: logits [classes]}: the window evaluate reads, then the head."""
        chosen = rows.float().index_select(0, window_rows(rows.shape[0], self.frames, self.placement).to(rows.device))
        logits = self.head(chosen.unsqueeze(0))
        out: dict[str, torch.Tensor] = {}
        for name in self.head_names:
            out[name] = logits[name][0]
        return out

    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        check_frames(frames)  # here too: the frames are cut to the head's window before preprocess sees them
        if self.clip_frames == 0:  # one row per frame: embed only the frames whose rows the head reads
            frames = frames.index_select(0, window_rows(frames.shape[0], self.frames, self.placement).to(frames.device))
        return self.from_features(self.rows(frames))


@dataclass
class _FrozenParts:
    """A frozen-feature student's checked, eager pieces: the TorchScript and the ONNX export each compile their own."""

    plan: FramePreprocess
    backbone: nn.Module          # the input teacher's backbone, float32 on the CPU
    head: _OneInputHead
    clip: dict                   # the teacher's clip windows ({} for an image backbone)
    example: torch.Tensor        # one input the backbone takes, for tracing
    feature_dim: int             # the teacher's row width
    meta: dict

    def module(self, backbone: nn.Module, head: nn.Module) -> ExportedFeatureStudent:
        """The exported module around these (eager or compiled) backbone and head."""
        module = ExportedFeatureStudent(backbone, head, self.plan, self.meta["frames"], list(self.meta["heads"]),
                                        int(self.clip.get("frames", 0)), int(self.clip.get("stride", 1))).eval()
        module.requires_grad_(False)  # an inference module: its logits need no torch.no_grad() around the call
        return module


def _frozen_parts(cfg: ExportConfig, record: dict, model: Student) -> _FrozenParts:
    """The frozen-feature student of run `cfg.run`, its input teacher rebuilt from the provenance; every check comes first."""
    from egodistill import cache
    from egodistill.backbones import BackboneSpec, create_backbone
    from egodistill.student.sources import recorded_seed, recorded_weights

    keys = list(record.get("input_keys") or [])
    if len(keys) != 1:
        raise ExportError(f"run {cfg.run} reads {len(keys)} input teachers ({', '.join(keys)}): an export maps RGB frames to logits, "
                          "so it takes a student of one rgb teacher: train one with --inputs rgb")
    location = cfg.cache or record.get("config", {}).get("cache")
    if not location:
        raise ExportError(f"run {cfg.run} does not name its training cache: give the cache holding teacher {keys[0]} with --cache")
    try:
        teacher = cache.open_cache(location, mode="r").teacher(keys[0])
    except EgodistillError as err:
        raise ExportError(f"cannot read run {cfg.run}'s input teacher {keys[0]} from {location} ({first_line(err, 160)}): "
                          "give the cache that holds it with --cache") from err
    p = teacher.provenance
    if p.modality != "rgb":
        raise ExportError(f"run {cfg.run}'s input teacher {teacher.key} is {p.modality} features: an export maps RGB frames to logits, "
                          "so it takes a student of one rgb teacher: train one with --inputs rgb")
    plan = frame_preprocess(p.preprocessing, teacher.key)
    clip = p.sampling.get("clip") or {}
    [weights] = recorded_weights([teacher], cfg.weights)
    built = create_backbone(BackboneSpec(backbone=p.backbone, in_chans=int(p.in_chans or 3), weights=weights, seed=recorded_seed(p.weights)), {})
    if built.clip != bool(clip) or built.feature_dim != teacher.feature_dim:
        raise ExportError(f"backbone {p.backbone} built from teacher {teacher.key}'s provenance gives {built.feature_dim}-wide "
                          f"{'clip' if built.clip else 'image'} features, the cache holds {teacher.feature_dim}-wide ones: extract the teacher again")
    h, w = plan.crop
    example = torch.zeros(1, 3, int(clip["frames"]), h, w) if clip else torch.zeros(2, 3, h, w)
    frames = int(model.cfg.frames)
    meta = {
        "format": "egodistill-export-1", "kind": "frozen-feature", "run": str(cfg.run), "backbone": p.backbone, "teacher": teacher.key,
        "weights": p.weights, "precision": p.precision, "heads": dict(model.cfg.heads), "frames": frames, "sampling": dict(p.sampling),
        "input": "uint8 [T, 3, H, W] RGB: the segment's frames sampled as the teacher's sampling says",
        "output": "{head: float32 logits [classes]}",
        "rows": "the backbone's features rounded to float16 (as cached); the head reads the centred window of `frames` rows (student/data.py frame_indices)",
        "preprocess": {**{k: list(v) if isinstance(v, tuple) else v for k, v in vars(plan).items()}, "reference": dict(p.preprocessing)},
        "input_keys": keys,
    }
    if p.precision not in (None, "fp32"):  # extraction ran the backbone under autocast; the module computes in float32
        meta["note"] = (f"teacher {teacher.key} was extracted at {p.precision}; this module computes its rows at float32, so its logits "
                        f"differ from evaluate's by that rounding (top-1 normally the same); from_features on the cached rows gives evaluate's")
    return _FrozenParts(plan, built.model.float().cpu().eval(), _OneInputHead(model.float().cpu().eval()).eval(), clip, example,
                        int(teacher.feature_dim), meta)


def _frozen_module(cfg: ExportConfig, record: dict, model: Student) -> tuple[torch.jit.ScriptModule, dict]:
    """The frozen-feature student of run `cfg.run` as TorchScript, and its metadata."""
    parts = _frozen_parts(cfg, record, model)
    # A clip backbone (backbones.ClipFeatures) reads its features through a Python function TorchScript cannot
    # compile: it is traced at one window, and the module feeds it one window at a time.
    backbone = _torchscript(parts.backbone, parts.example, parts.meta["backbone"], script=not parts.clip)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notices: the head always reads exactly `frames` rows
        head = torch.jit.trace(parts.head, torch.zeros(1, parts.meta["frames"], parts.feature_dim), strict=False)
        module = torch.jit.script(parts.module(backbone, head))
    return module, parts.meta


class _OnnxFeatureStudent(nn.Module):
    """`ExportedFeatureStudent` fixed to one frame size and `frames` frames, for ONNX: Pillow's resampling as two
    dense float64 matmuls (exact, as in `pil_resample`), the centre crop as constant slices. Outputs: logits per head."""

    def __init__(self, exported: ExportedFeatureStudent, backbone: nn.Module, head: nn.Module, width: int, height: int, bicubic: bool) -> None:
        super().__init__()
        self.backbone, self.head, self.head_names = backbone, head, list(exported.head_names)
        self.register_buffer("mean", exported.mean.clone())
        self.register_buffer("std", exported.std.clone())
        size = exported.resized_size(height, width)
        self.passes = []  # (name of a [in, out] buffer, dim), in Pillow's order: width, then height
        for dim, have, want in ((3, width, size[1]), (2, height, size[0])):
            if size != [height, width] and have != want:
                index, fixed = pil_coefficients(have, want, bicubic)
                dense = torch.zeros(have, want, dtype=torch.float64)
                dense.index_put_((index, torch.arange(want).view(-1, 1).expand_as(index)), fixed.double(), accumulate=True)
                self.register_buffer(f"resample{dim}", dense)
                self.passes.append((f"resample{dim}", dim))
        self.top, self.left = _half_even(size[0] - exported.crop_h), _half_even(size[1] - exported.crop_w)
        self.crop_h, self.crop_w = exported.crop_h, exported.crop_w

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pixels = frames.double()
        for name, dim in self.passes:
            moved = pixels.transpose(dim, 3)
            pixels = torch.clamp(torch.floor((moved @ getattr(self, name) + float(1 << 21)) / float(1 << 22)), 0.0, 255.0).transpose(dim, 3)
        images = pixels.float()[:, :, self.top:self.top + self.crop_h, self.left:self.left + self.crop_w]
        rows = self.backbone((images / 255.0 - self.mean) / self.std).half().float()
        logits = self.head(rows.unsqueeze(0))
        return tuple(logits[name][0] for name in self.head_names)


def _write_onnx(cfg: ExportConfig, record: dict, model: Student, out: Path) -> dict:
    """A frozen-feature image student as an ONNX graph for frames uint8 [frames, 3, H, W] at `cfg.frame_size`."""
    if cfg.frame_size is None:
        raise ExportError("--format onnx needs --frame-size WIDTHxHEIGHT: an ONNX graph takes frames of one size (your videos')")
    width, height = (int(v) for v in cfg.frame_size)
    parts = _frozen_parts(cfg, record, model)
    meta, exported = parts.meta, parts.module(parts.backbone, parts.head)
    if exported.clip_frames or exported.resampler != "pil":
        raise ExportError(f"--format onnx supports image backbones with timm's transform; {meta['backbone']} is a clip backbone: use --format torchscript")
    onnx_model = _OnnxFeatureStudent(exported, parts.backbone, parts.head, width, height, exported.interpolation == "bicubic").eval()
    onnx_model.requires_grad_(False)
    example = torch.zeros(exported.frames, 3, height, width, dtype=torch.uint8)
    meta = {**meta, "format": "egodistill-export-1 onnx", "input": f"uint8 [{exported.frames}, 3, {height}, {width}] RGB: the {exported.frames} frames the head reads",
            "output": f"logits per head, in the order {', '.join(exported.head_names)}"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's and exporter's notices
        try:
            atomic_write(out, lambda tmp: torch.onnx.export(onnx_model, (example,), str(tmp), input_names=["frames"], output_names=list(exported.head_names),
                                                            dynamo=False, opset_version=17))
        except Exception as err:  # noqa: BLE001 - the exporter fails in many ways, all meaning the same here
            raise ExportError(f"{meta['backbone']} cannot be exported to ONNX ({first_line(err, 160)}): pip install 'egodistill[onnx]' where the "
                              "exporter needs onnx, or use --format torchscript") from err
    atomic_write(out.with_name(out.name + ".json"), dumps(meta))
    return meta


def export_student(cfg: ExportConfig) -> tuple[Path, dict]:
    """Write run `cfg.run`'s last checkpoint as a TorchScript file at `cfg.out`; returns (path, recorded metadata)."""
    from egodistill.student.evaluate import load_student

    out = Path(cfg.out)
    if not out.parent.is_dir():
        raise ExportError(f"--out {out}: folder {out.parent} does not exist: create it or choose another --out")
    if out.is_dir():
        raise ExportError(f"--out {out} is a folder: name the file to write, e.g. {out / 'model.pt'}")
    check_choice(ExportError, "--format", cfg.format, FORMATS)
    if cfg.frame_size is not None and cfg.format != "onnx":
        raise ExportError("--frame-size is for --format onnx (a TorchScript export takes frames of any size): drop it")
    record, model = load_student(cfg.run)
    if cfg.format == "onnx":
        if isinstance(model, FramesStudent):
            raise ExportError(f"--format onnx supports frozen-feature students of an image teacher; {cfg.run} is an end-to-end student: use --format torchscript")
        return out, _write_onnx(cfg, record, model, out)
    if isinstance(model, FramesStudent):
        if cfg.weights or cfg.cache:
            raise ExportError(f"{cfg.run} is an end-to-end student: its checkpoint holds every weight, so drop --weights and --cache")
        module, meta = _end_to_end_module(cfg, record, model)
    else:
        module, meta = _frozen_module(cfg, record, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        atomic_write(out, lambda tmp: torch.jit.save(module, str(tmp), _extra_files={META_FILE: dumps(meta)}))
    return out, meta


def _end_to_end_module(cfg: ExportConfig, record: dict, model: FramesStudent) -> tuple[torch.jit.ScriptModule, dict]:
    fraction = eval_crop_fraction(model.cfg.backbone)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notices
        module = torch.jit.script(ExportedStudent(model.float().cpu().eval(), fraction).eval())
    meta = {
        "format": "egodistill-export-1", "kind": "end-to-end", "run": str(cfg.run), "backbone": model.cfg.backbone, "heads": dict(model.cfg.heads),
        "frames": model.cfg.frames, "input": "uint8 [T, 3, H, W] RGB", "output": "{head: float32 logits [classes]}",
        "preprocess": {"crop_fraction": fraction, "size": model.size, "resize": "roi_align aligned 2x2 samples",
                       "mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()},
        "input_keys": record.get("input_keys"),
    }
    return module, meta
