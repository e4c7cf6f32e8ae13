"""`export`: a trained end-to-end student as one TorchScript file that needs only torch to run.

The exported module maps the RGB frames of one segment, uint8 [T, 3, H, W] at any H, W, to {head: logits
[classes]}. Its preprocessing is the one `evaluate` scores the student with (student/network.py): the
centred square of the backbone's crop fraction of the short side, resized to the student's input size by
roi_align's 2x2-sample bilinear average (rewritten here with grid_sample so that loading needs no
torchvision), scaled to [0, 1] and normalised with the mean/std of the backbone's data config. The file
also records, as `_extra_files["egodistill.json"]` and as module attributes, the heads, the frames per
segment the student was trained on (sampled evenly over the segment, as the cache stores them) and the
preprocessing constants.

    model = torch.jit.load("model.pt"); logits = model(frames)   # frames: torch.uint8 [T, 3, H, W]

A frozen-feature student (a head over a teacher's cached features) is refused for now: its input teacher's
preprocessing (timm's PIL transform, extract/modalities.py) cannot be scripted as it stands.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from egodistill.common import EgodistillError, atomic_write, dumps, first_line
from egodistill.student.network import FramesStudent, eval_crop_fraction

META_FILE = "egodistill.json"


class ExportError(EgodistillError):
    """export cannot write this run as a module."""


@dataclass
class ExportConfig:
    run: str
    out: str


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


def _scriptable(student: FramesStudent) -> nn.Module:
    """The backbone as TorchScript: scripted where its code allows, else traced at the run's own clip shape
    (a traced clip model then takes exactly the run's frames per segment)."""
    backbone = student.backbone.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation and tracer notices
        try:
            return torch.jit.script(backbone)
        except Exception:  # noqa: BLE001 - any failure to script: trace instead
            t, s = student.cfg.frames, student.size
            example = torch.zeros(1, 3, t, s, s) if student.clip else torch.zeros(t, 3, s, s)
            try:
                return torch.jit.trace(backbone, example)
            except Exception as err:  # noqa: BLE001 - torch's tracer fails in many ways, all meaning the same here
                raise ExportError(f"backbone {student.cfg.backbone} can be neither scripted nor traced ({first_line(err, 160)}): "
                                  "export supports backbones TorchScript can hold") from err


def export_student(cfg: ExportConfig) -> tuple[Path, dict]:
    """Write run `cfg.run`'s last checkpoint as a TorchScript file at `cfg.out`; returns (path, recorded metadata)."""
    from egodistill.student.evaluate import load_student

    out = Path(cfg.out)
    if not out.parent.is_dir():
        raise ExportError(f"--out {out}: folder {out.parent} does not exist: create it or choose another --out")
    if out.is_dir():
        raise ExportError(f"--out {out} is a folder: name the file to write, e.g. {out / 'model.pt'}")
    record, model = load_student(cfg.run)
    if not isinstance(model, FramesStudent):
        raise ExportError(f"{cfg.run} is a frozen-feature student (a head over cached teacher features): export supports end-to-end students "
                          "(train-student --inputs frames) for now")
    fraction = eval_crop_fraction(model.cfg.backbone)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notices
        module = torch.jit.script(ExportedStudent(model.float().cpu().eval(), fraction).eval())
    meta = {
        "format": "egodistill-export-1", "run": str(cfg.run), "backbone": model.cfg.backbone, "heads": dict(model.cfg.heads),
        "frames": model.cfg.frames, "input": "uint8 [T, 3, H, W] RGB", "output": "{head: float32 logits [classes]}",
        "preprocess": {"crop_fraction": fraction, "size": model.size, "resize": "roi_align aligned 2x2 samples",
                       "mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()},
        "input_keys": record.get("input_keys"),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        atomic_write(out, lambda tmp: torch.jit.save(module, str(tmp), _extra_files={META_FILE: dumps(meta)}))
    return out, meta

